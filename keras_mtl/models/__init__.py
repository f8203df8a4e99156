"""Architectures from the papers, built from Keras / keras-cv parts."""

# Paper architectures (issue 7): trunks, heads and gin-configurable factories.
from keras_mtl.models.heads import ConvBNAct
from keras_mtl.models.heads import conv_head
from keras_mtl.models.heads import dense_head
from keras_mtl.models.mtfl_cnn import ConvStackCNN
from keras_mtl.models.mtfl_cnn import mtfl_cnn_multitask
from keras_mtl.models.resnet18 import ResidualBlock
from keras_mtl.models.resnet18 import ResNet
from keras_mtl.models.resnet18 import resnet18_multitask
from keras_mtl.models.segnet import MaxPoolingWithArgmax2D
from keras_mtl.models.segnet import MaxUnpooling2D
from keras_mtl.models.segnet import SegNet
from keras_mtl.models.segnet import segnet_multitask
from keras_mtl.models.thin_resnet import ResNetFCN
from keras_mtl.models.thin_resnet import thin_resnet_multitask
from keras_mtl.models.se_resnet import SEBottleneck
from keras_mtl.models.se_resnet import SEResNetDeepLabEncoder
from keras_mtl.models.se_resnet import astmt_deeplab
from keras_mtl.models.se_resnet import shared_deeplab
from keras_mtl.models.lenet import lenet_encoder
from keras_mtl.models.lenet import lenet_multitask
